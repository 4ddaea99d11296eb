"""Implied-vol surfaces: the analytic models and the fits (``fit_surface``) behind one ``VolSurface`` contract."""
