"""The mathematics behind the built-in metrics, as plain functions on arrays and tensors.

Nothing here knows about recipes, runs or plugins: each module takes samples (rows) and
returns numbers, and is tested on its own against closed forms and reference libraries
(scipy, POT, scikit-learn; ``tests/estimators``). The metric plugins in
``gan_pipe.plugins.metrics`` declare their parameters, draw samples through the evaluation
context and call these.

* :mod:`.rows` -- arrays as (N, d) float64 rows; drawing n rows by seed.
* :mod:`.transport` -- exact 1-D W1 and KS, sliced Wasserstein, exact W1 by assignment.
* :mod:`.histogram` -- KL / JS / TV on fixed histograms (Krichevsky-Trofimov KL).
* :mod:`.gaussian` -- Gaussian fits: closed-form KL, Frechet distance.
* :mod:`.kde` -- the Gaussian kernel density (Parzen window) log-density, bandwidth choice,
  Monte-Carlo KL against a known density.
* :mod:`.mmd` -- KID (unbiased polynomial-kernel MMD^2 over subsets).
* :mod:`.modes` -- the VEEGAN / PacGAN mode statistics.
* :mod:`.features` -- the feature classifier of ``fid`` (build, train, cache, extract).

These modules import numpy, scipy and torch when imported; the metric plugins import them
only inside ``compute`` so that listing plugins stays fast.
"""
