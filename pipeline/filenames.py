"""Names of the files in the folders the pipeline writes: one place, so readers and writers agree."""

# HEAD_DIR (run_head.py)
HEAD_META = "head.json"
HEAD_ARRAYS = "head.npz"
HEAD_ESTIMATOR = "estimator.joblib"
HEAD_REPORT = "report.json"
CONFUSION_PNG = "confusion_{split}.png"

# MODEL_DIR (pipeline.fuse)
MODEL_META = "model.json"
TORCHSCRIPT = "model.ts"
EXPORTED_PROGRAM = "model.pt2"
ONNX = "model.onnx"
CHECKPOINT = "checkpoint.pt"

# AUDIT_DIR (run_head.py audit)
AUDIT_CSV = "audit.csv"
AUDIT_JSON = "audit.json"
AUDIT_EXCLUDE = "exclude.txt"
AUDIT_PAGE = "index.html"
AUDIT_THUMBS = "thumbs"
