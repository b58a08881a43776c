"""A registered policy as an MLflow pyfunc model: prompts in, images out.

    model = mlflow.pyfunc.load_model("models:/focusdiff-shapes@champion")
    out = model.predict(pd.DataFrame({"prompt": ["a red circle"], "seed": [0]}))
    # out: one row per prompt with the PNG bytes (base64) of its image

The policy directory (a transformers checkpoint: weights, config, tokenizer) is the model's
artifact, loaded with `load_policy` (safetensors only), so the same files also load with
`focusdiff generate --policy <downloaded dir>`.
"""

from __future__ import annotations

import base64

import mlflow.models
import mlflow.pyfunc
import pandas as pd


class JanusImageModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from focusdiff.model.loading import load_policy

        self.policy = load_policy(context.artifacts["policy"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from focusdiff.eval.generation import png_bytes
        from focusdiff.model.sampler import SamplingConfig, sample

        if "prompt" not in model_input.columns:
            raise ValueError(f"expected a 'prompt' column, got columns {list(model_input.columns)}")
        prompts = [str(p) for p in model_input["prompt"]]
        seeds = [int(s) for s in model_input["seed"]] if "seed" in model_input.columns else list(range(len(prompts)))
        params = params or {}
        sampling = SamplingConfig(cfg_weight=float(params.get("cfg_weight", self.policy.guidance_scale)), temperature=float(params.get("temperature", 1.0)))
        images = sample(self.policy, prompts, seeds, sampling).images
        return pd.DataFrame({"prompt": prompts, "seed": seeds,
                             "image_png_base64": [base64.b64encode(png_bytes(im)).decode("ascii") for im in images]})


# MLflow "models from code": the model is this file, not a pickle, so loading a registered
# version never unpickles anything (the weights load with safetensors).
mlflow.models.set_model(JanusImageModel())
