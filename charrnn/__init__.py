"""charrnn: train recurrent (LSTM/GRU/RNN) language models on your own text.

The package imports nothing heavy at the top, so `charrnn --help` starts fast;
each command imports torch when it needs it.
"""

import warnings

__version__ = "0.1.0"

# torch warns once at import when numpy is absent; charrnn never needs numpy, and the
# warning would break the promise of one clean line on stderr.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
