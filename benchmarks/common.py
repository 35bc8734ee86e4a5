"What every benchmark script shares: paired rounds, the machine's load, the trainer's thread policy."
import os


def load_line(tag:str)->str:
    "The load average and usable CPUs, to print before and after a benchmark."
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{tag}: load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {cpus} usable CPUs"


def paired_rounds(fns:dict, rounds:int)->dict:
    "Run every callable of `fns` once per round, order reversed every other round; name -> list of its results per round."
    names, out = list(fns), {n: [] for n in fns}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]): out[n].append(fns[n]())
    return out


def default_threads()->int:
    "The trainer's policy (criasr.train.pick_threads); torch's own count where OMP_NUM_THREADS already decided."
    import torch
    from criasr.train import pick_threads
    return pick_threads(None) or torch.get_num_threads()
