"""Train a metanetwork from the Hydra configs in configs/ (same as `wsl train`).

    python scripts/train.py model=nggnn trainer.epochs=10
    python scripts/train.py -m model=gmn,scalegmn seed=0,1,2
"""

from wsl.train.entry import main

if __name__ == "__main__":
    main()
