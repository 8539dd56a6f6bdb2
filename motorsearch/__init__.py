"""motorsearch: hyperparameter search for a 3D flagellar-motor detector in cryo-ET tomograms."""

__version__ = "0.1.0"
