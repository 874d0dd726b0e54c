"""Cloud drivers behind one small port (:mod:`cloudpilot.clouds.base`)."""
