"""Two gloo processes: gather_with_grad returns every rank's rows and sends each rank the summed gradient of its own
rows (as the official all_gather(sync_grads=True)). Run by test_fidelity.py: `distributed_gather.py RENDEZVOUS_FILE`
(a path that does not exist yet)."""

import sys

import torch
import torch.distributed as dist

from bridgetower_gaudi.modeling.modeling_bridgetower import gather_with_grad


def main(rank: int, world_size: int, rendezvous_file: str) -> None:
    # A file rendezvous: no port to pick, so none can collide with another process on the host.
    dist.init_process_group("gloo", init_method=f"file://{rendezvous_file}", rank=rank, world_size=world_size)
    local = torch.full((2, 3), float(rank + 1), requires_grad=True)
    gathered, my_rank = gather_with_grad(local)
    weights = torch.arange(gathered.numel(), dtype=torch.float).reshape(gathered.shape) * (rank + 1)
    (gathered * weights).sum().backward()
    # every rank's loss weights the rows of rank r by (index) * (loss rank + 1): summed over both losses, x3
    expected = torch.arange(gathered.numel(), dtype=torch.float).reshape(gathered.shape)[2 * rank : 2 * rank + 2] * 3
    ok = my_rank == rank and gathered.shape == (4, 3) and torch.equal(gathered[2:], torch.full((2, 3), 2.0))
    ok = ok and torch.equal(local.grad, expected)
    verdict = "OK" if ok else f"BAD {local.grad.tolist()} {expected.tolist()}"
    sys.stdout.write(f"RANK {rank} {verdict}\n")  # one write per line: the ranks share a pipe
    sys.stdout.flush()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.multiprocessing.spawn(main, args=(2, sys.argv[1]), nprocs=2)
