"""notebooks/course.ipynb runs top to bottom, as a student's kernel runs it, on the stand-ins."""
import nbformat
from nbclient import NotebookClient

from conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "course.ipynb"


def test_course_notebook_runs_on_stand_ins(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "store the notebook without outputs"
    assert "parameters" in code[0].metadata.get("tags", [])
    monkeypatch.setenv("TORCH_RESNET_FAST", "1")
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert text.count("STAND-IN") == 3 and "DIFFERENT" not in text and text.count(" same") == 3
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert html.count("data:image/png;base64,") >= 5  # both runs' curves and the report's three figures
    assert "Fine-tuning report" in html and "<body" not in html
    for made in ("weights/resnet_cifar100.pt", "runs/freeze/model.pt", "runs/full/model.pt", "report/report.html",
                 "resnet_cifar10_keras.pkl"):
        assert (tmp_path / made).is_file(), made
