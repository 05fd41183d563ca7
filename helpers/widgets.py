"""Optional ipywidgets controls for the model notebooks: pick a model and variant, press Run.

Offered only in an interactive session (`environment.is_interactive()`); a headless papermill run or a
Kaggle "Save & Run All" skips them, so nothing in a notebook ever waits for a click. The Run button calls
the same runner as the notebook cells (`runner.run_notebook`) with the chosen values.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from . import environment
from .runner import RunParams, model_families, run_notebook, variants_of

DEMO_CHOICES = (("auto: demo when no real data", "auto"), ("always demo", True), ("never demo", False))


@dataclass
class Controls:
    """The widgets, so a caller (or a test) can read and set them."""

    family: object
    variant: object
    image_limit: object
    flip_test: object
    demo: object
    button: object
    output: object
    box: object
    base: RunParams

    def params(self) -> RunParams:
        """The base parameters with the widgets' values (image limit 0 means every image)."""
        limit = int(self.image_limit.value)
        return dataclasses.replace(self.base, model=self.family.value, variant=self.variant.value,
                                   image_limit=limit if limit > 0 else None, flip_test=bool(self.flip_test.value),
                                   demo=self.demo.value)


def build_controls(params: RunParams, run_fn: Callable[[RunParams], object] = run_notebook) -> Controls:
    """Model family and variant pickers, image limit, flip test, demo mode and a Run button calling `run_fn`."""
    import ipywidgets as w

    from .models.registry import get_spec

    spec = get_spec(params.model_id)
    family = w.Dropdown(options=model_families(), value=spec.family, description="model")
    variant = w.Dropdown(options=variants_of(spec.family), value=spec.variant, description="variant")
    image_limit = w.BoundedIntText(value=params.image_limit or 0, min=0, max=10**6, description="image limit",
                                   tooltip="0: every test image")
    flip_test = w.Checkbox(value=params.flip_test, description="flip test")
    demo = w.Dropdown(options=list(DEMO_CHOICES), value=params.demo, description="demo")
    button = w.Button(description="Run", button_style="primary", icon="play")
    output = w.Output()

    def on_family(change):
        variant.options = variants_of(change["new"])
        variant.value = variant.options[0]

    family.observe(on_family, names="value")
    controls = Controls(family, variant, image_limit, flip_test, demo, button, output,
                        w.VBox([w.HBox([family, variant]), w.HBox([image_limit, flip_test, demo]), button, output]),
                        params)

    def on_click(_button):
        output.clear_output()
        with output:
            button.disabled = True
            try:
                run_fn(controls.params())
            except Exception as exc:  # noqa: BLE001 - show the message next to the button, keep the widgets usable
                print(f"{type(exc).__name__}: {exc}")
            finally:
                button.disabled = False

    button.on_click(on_click)
    return controls


def offer_controls(params: RunParams, run_fn: Callable[[RunParams], object] = run_notebook,
                   interactive: bool | None = None) -> Controls | None:
    """Show the controls in an interactive session; say so and return None in a batch run."""
    if not (environment.is_interactive() if interactive is None else interactive):
        print("interactive controls skipped: this is a batch (headless) run; change the parameters cell instead")
        return None
    from IPython.display import display

    controls = build_controls(params, run_fn)
    display(controls.box)
    return controls
