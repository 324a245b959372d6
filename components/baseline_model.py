"""The Evaluator's baseline: the latest blessed model that is not the candidate.

TFX's ``LatestBlessedModelStrategy`` returns the latest blessed model of the
store.  On a rerun with unchanged data and code the Trainer's output comes
from the cache, so it is the very model the first run blessed: the candidate
would be compared with itself (a change of exactly zero passes every change
threshold), blessed again, re-exported under a new version and pushed a
second time.

``LatestBlessedOtherModelStrategy`` also takes the candidate (the Trainer's
output) and never returns it.  On a rerun the Evaluator therefore sees the
same inputs as the first time and comes from the cache, and so do the
MobileExporter and the MobilePusher: nothing is pushed again.

KubeflowV2DagRunner compiles only TFX's built-in strategies, so the Kubeflow
pipeline keeps ``LatestBlessedModelStrategy``; there the MobilePusher's
lineage check (a model already pushed as the latest version is not pushed
again) still keeps a rerun from publishing a duplicate version.
"""

from typing import Dict, List, Optional

from tfx import types
from tfx.dsl.components.common import resolver
from tfx.dsl.input_resolution.strategies import latest_blessed_model_strategy

MODEL_KEY = 'model'
MODEL_BLESSING_KEY = 'model_blessing'
CANDIDATE_KEY = 'candidate'


class LatestBlessedOtherModelStrategy(resolver.ResolverStrategy):
  """The latest blessed model (and its blessing) other than the candidate.

  Inputs: ``model`` (every Model), ``model_blessing`` (every ModelBlessing),
  ``candidate`` (the model being evaluated).  Outputs the same keys; ``model``
  and ``model_blessing`` are empty when no other model is blessed (a first
  run), which the Evaluator takes as "no baseline", never as a failure.
  """

  def resolve_artifacts(
      self, store, input_dict: Dict[str, List[types.Artifact]]
  ) -> Optional[Dict[str, List[types.Artifact]]]:
    del store
    candidates = input_dict.get(CANDIDATE_KEY, [])
    excluded = {a.id for a in candidates} | {a.uri for a in candidates}
    others = [m for m in input_dict.get(MODEL_KEY, [])
              if m.id not in excluded and m.uri not in excluded]
    # pylint: disable=protected-access
    result = latest_blessed_model_strategy.LatestBlessedModelStrategy()._resolve(
        {MODEL_KEY: others,
         MODEL_BLESSING_KEY: list(input_dict.get(MODEL_BLESSING_KEY, []))},
        MODEL_KEY, MODEL_BLESSING_KEY)
    result[CANDIDATE_KEY] = list(candidates)
    return result
