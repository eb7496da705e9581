"""charrnn: train recurrent (LSTM/GRU/RNN) language models on your own text.

The package imports nothing heavy at the top, so `charrnn --help` starts fast;
each command imports torch when it needs it.
"""

__version__ = "0.1.0"
