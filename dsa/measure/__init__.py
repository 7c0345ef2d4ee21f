"""Measurements on this machine: the one timing function (:mod:`.timing`), profiles with torch.profiler
(:mod:`.profiler`) and calibration/validation of the roofline model against them (:mod:`.calibrate`)."""
