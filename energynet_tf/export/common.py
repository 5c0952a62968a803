"""Names and the error shared by the export modules: the serving signature's keys and the files of an export."""



SERVING_KEY = "serving_default"


INPUT_NAME = "images"


OUTPUT_KEYS = ("logits", "decisions", "probabilities", "energy")


BATCHED_METHODS = ("gather", "dense")


TFLITE_BATCHED_METHODS = ("single",) + BATCHED_METHODS


DEFAULT_BATCHED_METHOD = "gather"  # the SavedModel's


DEFAULT_TFLITE_BATCHED_METHOD = "single"  # batch size 1: see the module doc


SAVED_MODEL_DIR = "saved_model"


TFLITE_FILE = "model.tflite"


INT8_TFLITE_FILE = "model_int8.tflite"


METADATA_FILE = "export.json"


FORMAT_VERSION = 1


class ExportError(ValueError):
    """An export could not be made or read; the message says why and what to do."""
