"""The wire protocol module: reserved item keys."""

import pytest

from blender_worker.protocol import RESERVED_ITEM_KEYS, check_item_keys


@pytest.mark.parametrize("key", RESERVED_ITEM_KEYS)
def test_every_reserved_key_is_refused_by_name(key):
    with pytest.raises(ValueError) as info:
        check_item_keys({"image": 1, key: 2})
    assert repr(key) in str(info.value)
    assert all(k in str(info.value) for k in RESERVED_ITEM_KEYS)  # the message lists the set


def test_user_keys_pass():
    check_item_keys({"image": 1, "sequence": 2, "btid_of_parent": 3})
