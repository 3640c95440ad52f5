"""Online monitors of a camera's promise: is the calibrated guarantee still holding while the service runs?

:mod:`.drift` watches, without labels, whether a camera's frames still look like the calibration frames;
:mod:`.audit` tests the risk among accepted frames from the labels of a random audit sample;
:mod:`.binomial` holds the binomial tail bound both rest on. Numpy and the standard library only.
"""
