"""Train a graph hypernetwork on digits from the Hydra configs (same as `wsl train-ghn`, configs/ghn.yaml).

    python scripts/train_ghn.py                                       # GHN-2, 1000 steps
    python scripts/train_ghn.py hypernet=ghn3 steps=300 hypernet.mip=true
    nice -n 10 python scripts/train_ghn.py steps=1500 minutes=12 package=ghn2-digits
    python scripts/train_ghn.py -m hypernet=ghn2,ghn3,logah seed=0,1

Writes metrics.csv, result.json and hypernet/ (save_pretrained format) to the run directory.
"""

from wsl.train.ghn_entry import main

if __name__ == "__main__":
    main()
