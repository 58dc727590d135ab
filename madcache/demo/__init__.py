"""The demo: a generated world in the original file formats (world/), the demo CLIP (teacher),
the pipeline end to end (run, `make demo`) and its training settings, chosen on the baseline
(search). May import any stage."""
