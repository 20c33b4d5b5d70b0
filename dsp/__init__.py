"""telediag.dsp."""

from telediag.dsp.design import chain as chain
from telediag.dsp.design import ecg_bandpass as ecg_bandpass
from telediag.dsp.design import notch as notch
from telediag.dsp.design import steady_state_zi as steady_state_zi
from telediag.dsp.sosfilt import SosFilter as SosFilter
from telediag.dsp.sosfilt import SosState as SosState
from telediag.dsp.sosfilt import sosfilt as sosfilt
