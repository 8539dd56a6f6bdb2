"""From a search to the final model: the model files a search's ranking leads to.

- :mod:`.out_of_fold`: a configuration's models on each fold, scored on the fold each did not see:
  the decision threshold (and quantile) calibrated on out-of-fold predictions;
- :mod:`.ensemble`: ``export --ensemble K``, one file holding the top-K models, averaged;
- :mod:`.refit`: ``refit``, the chosen configuration trained on all labelled tomograms.

The ranking they start from is ``export``'s (:func:`motorsearch.tracking.leaderboard.export_ranking`):
the confirmed one when the search was confirmed across folds (:mod:`motorsearch.search.confirm`).
"""
