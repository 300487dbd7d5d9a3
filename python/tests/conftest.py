import os
import sys

# The fixture module (cluster.py) is imported by the tests as a plain module.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
