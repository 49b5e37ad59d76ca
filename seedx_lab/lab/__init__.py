"""The lab around the pipeline: named capture (``trace``), the ``<img>`` probes, and widgets."""
