"""Homecare edge gateway: daemon core.

Keep this file free of imports: drivers and DSP import small pure modules from here."""
