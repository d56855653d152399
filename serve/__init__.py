"""Ray Serve application for a finished run."""
