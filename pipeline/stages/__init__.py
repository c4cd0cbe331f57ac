"""One module per ./run.sh stage: add_arguments(parser) and run(args), parsing and one library call. The
module docstring is the stage's --help text (first line: the summary)."""
