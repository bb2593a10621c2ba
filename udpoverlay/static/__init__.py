"""Static mode: the daemon with its peers from the command line (and a
peers file), no lease store: laptops and small fixed setups."""
