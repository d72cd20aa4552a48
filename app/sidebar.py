"""The sidebar: which algorithms run, their inner-loop settings, the page layout and the device."""

from __future__ import annotations

import html

import streamlit as st

from app import state
from app.models import ModelEntry, models_dir
from app.resources import device_description
from engine.compare import effective_settings
from engine.learners import AdaptSettings
from engine.optim import INNER_OPTIMIZERS

MAX_INNER_STEPS = 50
MIN_INNER_LR, MAX_INNER_LR, INNER_LR_STEP = 1e-5, 1e4, 0.05


def render_sidebar(models: dict[str, ModelEntry]) -> tuple[list[str], AdaptSettings, str]:
    """(selected algorithms, the settings they adapt with, the device in words)."""
    available = [name for name, entry in models.items() if entry.available]
    with st.sidebar:
        st.header("What runs")
        chosen = st.multiselect(
            "Algorithms", available, default=state.algorithms_default(available), key=state.ALGORITHMS,
            placeholder="No trained checkpoint yet" if not available else "Choose algorithms",
            help="Only algorithms with a checkpoint in the models folder can run.",
            disabled=not available,
        )
        selected = [name for name in chosen if name in available]
        with st.expander(f"Checkpoints ({len(available)} of {len(models)} available)"):
            render_model_list(models)

        st.subheader("Inner loop")
        use_defaults = st.toggle("Use each model's own defaults", key=state.USE_DEFAULTS,
                                 help="Steps and learning rate each checkpoint was configured with for test time.")
        if use_defaults:
            render_model_defaults(models, selected)
            steps_value, lr_value = None, None
        else:
            steps_value = int(st.slider("Inner steps", 0, MAX_INNER_STEPS, key=state.STEPS,
                                        help="Gradient steps on the support set (0 = the meta-learned "
                                             "initialisation with a zero head: uniform predictions)."))
            lr_value = float(st.number_input("Inner learning rate", min_value=MIN_INNER_LR, max_value=MAX_INNER_LR,
                                             step=INNER_LR_STEP, format="%.4g", key=state.LR,
                                             help="Very large values make the inner loop diverge: "
                                                  "the app then says so next to the algorithm."))
        optimizers = [state.MODEL_DEFAULT, *sorted(INNER_OPTIMIZERS)]
        state.keep_choice_valid(state.OPTIMIZER, optimizers)
        optimizer = st.selectbox("Inner-loop optimizer", optimizers, key=state.OPTIMIZER,
                                 help="Every optimizer the engine registers (engine.optim); the model default "
                                      "is the one each model was meta-trained with (sgd, or armijo for iMAML).")
        doc = [] if optimizer == state.MODEL_DEFAULT else \
            (INNER_OPTIMIZERS[optimizer].__doc__ or "").strip().splitlines()
        if doc:
            st.caption(doc[0])
        gradient = [name for name in selected if models[name].has_inner_loop]
        if selected and not gradient:
            st.caption("None of the selected algorithms has an inner loop; these settings do not apply.")
        elif any(not models[n].has_inner_loop for n in selected):
            st.caption("ProtoNet-style learners have no inner loop: these settings do not apply to them.")
        finetune = render_finetune_choice(models, selected)

        st.subheader("Page")
        st.radio("Layout", state.LAYOUTS, key=state.LAYOUT, horizontal=True,
                 help="Auto: task and results side by side on screens at least 1280 px wide, results below "
                      "the task on narrower ones.")

        st.subheader("Device")
        description = device_description()
        st.markdown(f":material/memory: `{description}`")
        st.caption("Models run on the GPU when one is available, otherwise on the CPU.")
    settings = AdaptSettings(steps=steps_value, lr=lr_value,
                             optimizer=None if optimizer == state.MODEL_DEFAULT else str(optimizer),
                             finetune=finetune)
    return selected, settings, description


def render_model_list(models: dict[str, ModelEntry]) -> None:
    """Every registered algorithm with the state of its checkpoint."""
    for name, entry in models.items():
        if entry.available:
            icon = ":orange[:material/warning:]" if entry.untrained else ":green[:material/check_circle:]"
            text = entry.summary()
        else:
            icon = ":gray[:material/block:]" if entry.missing else ":red[:material/error:]"
            text = "unavailable: " + (entry.problem or "")
        st.markdown(f"{icon} **{name}** <span class='mp-model-note'>{html.escape(text)}</span>",
                    unsafe_allow_html=True)
    st.caption(f"Models folder: `{models_dir()}` (set `META_PLAYGROUND_MODELS` to change it).")


def render_model_defaults(models: dict[str, ModelEntry], selected: list[str]) -> None:
    """Each selected model's own steps and learning rate, under the optimizer chosen below."""
    lines = []
    # The optimizer picked below (a rerun later) can bring its own step size (Adam's 1e-3).
    picked = state.value(state.OPTIMIZER)
    shown = AdaptSettings(optimizer=picked if picked in INNER_OPTIMIZERS else None)
    for name in selected:
        learner = models[name].learner
        steps, lr, _ = effective_settings(learner, shown) if learner is not None else (None, None, None)
        if steps is None:
            lines.append(f"{name}: no inner loop")
        else:
            unit = "step" if steps == 1 else "steps"
            lines.append(f"{name}: {steps} {unit}, lr {lr:g}" if isinstance(lr, float)
                         else f"{name}: {steps} {unit}, {lr} lr")
    if lines:
        st.caption(" · ".join(lines))


def render_finetune_choice(models: dict[str, ModelEntry], selected: list[str]) -> str | None:
    """Which weights adaptation changes, shown only when a selected algorithm offers the choice
    (pretrain: its head alone or every layer); None keeps each model's own default."""
    offering = [name for name in selected if models[name].finetune_modes]
    if not offering:
        return None
    modes = list(dict.fromkeys(mode for name in offering for mode in models[name].finetune_modes))
    options = [state.MODEL_DEFAULT, *modes]
    state.keep_choice_valid(state.FINETUNE, options)
    choice = st.selectbox(f"Fine-tune ({', '.join(offering)})", options, key=state.FINETUNE,
                          help="head: fit only a fresh linear head on the support set (the pre-trained backbone "
                               "stays frozen); all: every layer, the backbone with a smaller learning rate.")
    return None if choice == state.MODEL_DEFAULT else str(choice)
