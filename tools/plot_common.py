"""What tools/plot.py and tools/plot_eval.py share: finding matplotlib and telling finite numbers."""

import math
import os
import sys


def import_pyplot(fail):
    """matplotlib.pyplot with the Agg backend. Without matplotlib, the running script is started
    once more under /usr/bin/python3: a Python of its own (pyenv, a venv) may be first on PATH
    while Debian's python3-matplotlib lives there. Else fail(message), which must not return."""
    try:
        import matplotlib
    except ImportError:
        system = "/usr/bin/python3"
        if (os.environ.get("SCANLINE_PLOT_REEXEC") is None and os.path.exists(system)
                and os.path.realpath(sys.executable) != os.path.realpath(system)):
            os.environ["SCANLINE_PLOT_REEXEC"] = "1"
            os.execv(system, [system, os.path.abspath(sys.argv[0])] + sys.argv[1:])
        fail("matplotlib is not installed for " + sys.executable +
             " (Debian: apt-get install python3-matplotlib)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def finite(value):
    """A JSON number that is neither a bool nor infinite nor NaN."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
