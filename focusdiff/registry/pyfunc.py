"""A registered policy as an MLflow pyfunc model: prompts in, images out.

    model = mlflow.pyfunc.load_model("models:/focusdiff-shapes@champion")
    out = model.predict(pd.DataFrame({"prompt": ["a red circle"], "seed": [0]}))
    # out: one row per prompt with the PNG bytes (base64) of its image
    model.predict(df, params={"cfg_weight": 3.0, "temperature": 0.9})   # sampling settings

The version carries SIGNATURE (shown in the registry UI's Schema; serving tools validate
requests against it) and INPUT_EXAMPLE.

The policy directory (a transformers checkpoint: weights, config, tokenizer) is the model's
artifact, loaded with `load_policy` (safetensors only), so the same files also load with
`focusdiff generate --policy <downloaded dir>`.
"""

from __future__ import annotations

import base64

import mlflow.models
import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "prompt"), ColSpec("long", "seed", required=False)]),
    outputs=Schema([ColSpec("string", "prompt"), ColSpec("long", "seed"), ColSpec("string", "image_png_base64")]),
    # the sampler's settings (focusdiff.model.sampling.SamplingConfig); cfg_weight None: the policy's own
    params=ParamSchema([ParamSpec("cfg_weight", "double", None), ParamSpec("temperature", "double", 1.0),
                        ParamSpec("top_k", "long", 0), ParamSpec("top_p", "double", 1.0)]),
)
INPUT_EXAMPLE = pd.DataFrame({"prompt": ["a red circle on the left of a blue square", "two purple squares"],
                              "seed": [0, 1]})


class JanusImageModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from focusdiff.model.loading import load_policy

        self.policy = load_policy(context.artifacts["policy"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from focusdiff.eval.generation import png_bytes
        from focusdiff.model.sampler import sample
        from focusdiff.model.sampling import SamplingConfig

        if "prompt" not in model_input.columns:
            raise ValueError(f"expected a 'prompt' column, got columns {list(model_input.columns)}")
        prompts = [str(p) for p in model_input["prompt"]]
        given = model_input["seed"] if "seed" in model_input.columns else [None] * len(prompts)
        seeds = [i if pd.isna(seed) else int(seed) for i, seed in enumerate(given)]  # optional: the row's index
        settings = {k: v for k, v in (params or {}).items() if v is not None}
        settings.setdefault("cfg_weight", self.policy.guidance_scale)
        sampling = SamplingConfig.model_validate(settings)  # an unknown or invalid setting is an error naming it
        images = sample(self.policy, prompts, seeds, sampling).images
        return pd.DataFrame({"prompt": prompts, "seed": seeds,
                             "image_png_base64": [base64.b64encode(png_bytes(im)).decode("ascii") for im in images]})


# MLflow "models from code": the model is this file, not a pickle, so loading a registered
# version never unpickles anything (the weights load with safetensors).
mlflow.models.set_model(JanusImageModel())
