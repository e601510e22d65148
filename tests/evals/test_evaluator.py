"""The DMOS reference of each source, on a hand-written set of records."""

import numpy as np

from cpllm.data import features
from cpllm.data import pipeline
from cpllm.evals import evaluator

NO = features.NO_CRF


def test_reference_records_pick_the_best_non_variant_per_source():
  # a: source (5.0), blur (2.0), two CRFs; b: only CRF variants; c: the source alone.
  rows = [("a", NO, 5.0), ("a", NO, 2.0), ("a", 23, 4.0), ("a", 41, 2.5),
          ("b", 23, 4.2), ("b", 35, 3.1), ("c", NO, 3.3)]
  records = [dict(id=f"r{i}", source_id=s, mos=m, is_original=True, crf=c,
                  dimensions=[np.nan] * len(features.DIMENSIONS), description="")
             for i, (s, c, m) in enumerate(rows)]
  got = evaluator.reference_records(pipeline.read_metadata(records))
  np.testing.assert_array_equal(got, [True, False, False, False, False, False, True])
