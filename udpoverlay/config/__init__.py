"""Configuration intake, below everything that uses it: the flag table
(flags.py, each `run` flag declared once), the parser generated from it
(parser.py), flanneld's environment and env file (envflags.py), the checked
Options (options.py, values.py, defaults.py), the static peer syntax and
checks (peerspec.py) and the peers file (peersfile.py, textfile.py).
Nothing here imports the daemon, the modes or the CLI."""
