"""Scaling experiments: analytic FLOPs (flops.py), fits (fit.py), the ladder report (report.py)."""
