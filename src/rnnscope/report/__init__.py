"""Layer 5, the HTML report of a run or a study: it reads only run and study directories
(`data`), builds pages from blocks (`page`, `run_page`, `study_page`) and writes one
self-contained file (`render`)."""
