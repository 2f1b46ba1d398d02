"""The job: validate, reference, passes, build, gates, report; cpu-auto above it; the pass cache
and atomic outputs."""
