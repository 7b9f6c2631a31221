"""Loaders for the published weight-space zoos, one module per format, all returning :class:`ZooRecords`.

=====================  ================================================================================
``small_cnn_zoo``      Small CNN Zoo (Unterthiner et al. 2020): weights.npy + layout.csv + metrics.csv.gz
``dws_inr``            DWSNets MNIST / FashionMNIST SIREN INRs: per-INR .pth + splits JSON
``nfn_siren``          NFN / NFT SIREN zoos: ``randinit_smaller[_aug<i>]_<label>s/net<idx>.pth``
``model_zoos``         Model Zoos (Schürholt et al. 2022): ray-tune trial dirs, params.json, result.json
``cnn_wild_park``      CNN Wild Park (Kofinas et al. 2024): ``checkpoint.pt`` with model + config
=====================  ================================================================================
"""

from .base import ZooFormatError, ZooRecords

__all__ = ["ZooFormatError", "ZooRecords"]
