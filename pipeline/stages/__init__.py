"""One module per ./run.sh stage: add_arguments(parser) and run(args), parsing and one library call. The
module docstring is the stage's --help text (first line: the summary)."""

# stage name -> its module in pipeline/stages (their heavy imports happen in run(), so `--help` starts fast)
STAGES = {
    "weights": "pipeline.stages.weights",
    "download": "pipeline.stages.download",
    "make-data": "pipeline.stages.make_data",
    "folds": "pipeline.stages.folds",
    "cache-images": "pipeline.stages.cache_images",
    "train": "pipeline.stages.train",
    "embed": "pipeline.stages.embed",
    "ensemble": "pipeline.stages.ensemble",
    "ensemble-report": "pipeline.stages.ensemble_report",
    "pseudo": "pipeline.stages.pseudo",
    "show": "pipeline.stages.show",
    "search-text": "pipeline.stages.search_text",
    "evaluate": "pipeline.stages.evaluate",
    "compare": "pipeline.stages.compare",
    "score": "pipeline.stages.score",
    "validate": "pipeline.stages.validate",
    "kernel": "pipeline.stages.kernel",
    "upload": "pipeline.stages.upload",
    "status": "pipeline.stages.status",
    "submit": "pipeline.stages.submit",
    "demo": "pipeline.stages.demo",
    "test": "pipeline.stages.test",
}

# The stages whose job is the network; every other stage runs with the hub offline (pipeline/core/network.py)
NETWORK = {"weights", "download", "upload", "submit", "status"}
