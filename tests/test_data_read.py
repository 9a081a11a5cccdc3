"""Reading prepared datasets: batch packing (segment ids, positions, loss mask) exact on
hand-made windows."""

import numpy as np
import pytest

from growjax.data import packing

BOS, EOS, PAD = 1, 2, 0


def test_segments_positions_and_loss_mask_on_hand_made_windows():
  windows = np.array([
      [5, 6, EOS, BOS, 7, 8, EOS, BOS, 9],        # continues a document, then two start
      [BOS, 5, EOS, BOS, 6, EOS, PAD, PAD, PAD],  # padded tail
      [BOS, 3, 4, 5, 6, 7, 8, 9, 10],             # one document filling the window
  ], dtype=np.uint16)
  b = packing.batch_from_windows(windows, bos_id=BOS, pad_id=PAD, eos_id=EOS)
  assert set(b) == set(packing.BATCH_KEYS)
  assert all(v.dtype == np.int32 and v.shape == (3, 8) for v in b.values())
  np.testing.assert_array_equal(b["inputs"], windows[:, :-1])
  np.testing.assert_array_equal(b["targets"], windows[:, 1:])
  np.testing.assert_array_equal(b["segment_ids"], [[1, 1, 1, 2, 2, 2, 2, 3],
                                                   [1, 1, 1, 2, 2, 2, 0, 0],
                                                   [1, 1, 1, 1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(b["positions"], [[0, 1, 2, 0, 1, 2, 3, 0],
                                                 [0, 1, 2, 0, 1, 2, 0, 0],
                                                 [0, 1, 2, 3, 4, 5, 6, 7]])
  np.testing.assert_array_equal(b["loss_mask"], [[1] * 8,
                                                 [1, 1, 1, 1, 1, 0, 0, 0],
                                                 [1] * 8])


@pytest.mark.parametrize("pad_id", [EOS, -1, None])
def test_a_pad_id_that_is_eos_or_absent_marks_no_padding(pad_id):
  windows = np.array([[BOS, 5, EOS, EOS, BOS, 6, EOS]])
  b = packing.batch_from_windows(windows, bos_id=BOS, pad_id=pad_id, eos_id=EOS)
  np.testing.assert_array_equal(b["segment_ids"], [[1, 1, 1, 1, 2, 2]])
  np.testing.assert_array_equal(b["positions"], [[0, 1, 2, 3, 0, 1]])
  np.testing.assert_array_equal(b["loss_mask"], [[1] * 6])
