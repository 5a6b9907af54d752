"""COCO export, read back with pycocotools: hand-made masks and a real Blender stream."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from blendtorch_ray.coco import CocoOptions, export_coco, to_coco  # noqa: E402

SCENE = Path(__file__).resolve().parent.parent / "examples" / "annotations" / "scene.py"


def load(data: dict) -> COCO:
    coco = COCO()
    coco.dataset = json.loads(json.dumps(data))  # must survive json
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def handmade_item() -> dict:
    inst = np.zeros((40, 60), dtype=np.int32)
    inst[5:15, 10:30] = 4  # a 20x10 rectangle
    inst[20:36, 35:55] = 9  # a 20x16 ring with a hole
    inst[24:32, 40:50] = 0
    inst[30:38, 2:6] = 11  # a sliver of class 0 (background): left out
    semantic = np.select([inst == 4, inst == 9], [2, 5], 0)
    rgba = np.zeros((40, 60, 4), dtype=np.uint8)
    kps = np.array([[[12.5, 6.5, 2], [0, 0, 0]], [[36.0, 21.0, 1], [54.5, 35.5, 2]]], dtype=np.float32)
    return {"rgba": rgba, "instance": inst, "semantic": semantic, "keypoints": kps,
            "keypoint_ids": np.array([4, 9]), "btid": 1, "seq": 7}


def test_handmade_masks_round_trip():
    item = handmade_item()
    data = to_coco([item], CocoOptions(categories={2: "box", 5: "ring"}, keypoint_names=("a", "b")))
    coco = load(data)
    assert coco.imgs[1]["file_name"] == "001_000007.png"
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["box", "ring"]
    anns = {a["instance_id"]: a for a in coco.loadAnns(coco.getAnnIds(imgIds=[1]))}
    assert sorted(anns) == [4, 9]
    for i, ann in anns.items():
        np.testing.assert_array_equal(coco.annToMask(ann), item["instance"] == i)
        assert ann["area"] == int((item["instance"] == i).sum())
    assert anns[4]["bbox"] == [10.0, 5.0, 20.0, 10.0]
    assert anns[9]["bbox"] == [35.0, 20.0, 20.0, 16.0]
    assert anns[4]["category_id"] == 2 and anns[9]["category_id"] == 5
    assert anns[4]["keypoints"] == [12.5, 6.5, 2, 0.0, 0.0, 0] and anns[4]["num_keypoints"] == 1
    assert anns[9]["num_keypoints"] == 2


def perturbed_item(box_shift: int = 0, drop_ring: bool = False) -> dict:
    """``handmade_item`` with its box moved ``box_shift`` pixels right and/or its ring removed."""
    item = handmade_item()
    inst = item["instance"]
    if box_shift:
        inst[inst == 4] = 0
        inst[5:15, 10 + box_shift : 30 + box_shift] = 4
    if drop_ring:
        inst[inst == 9] = 0
    item["semantic"] = np.select([inst == 4, inst == 9], [2, 5], 0)
    del item["keypoints"], item["keypoint_ids"]
    return item


def segm_stats(truth: list, detected: list) -> np.ndarray:
    """COCOeval "segm" stats of the masks exported from ``detected`` (score 1) against the
    ground truth exported from ``truth`` (same image order, so the same image ids)."""
    coco = load(to_coco(truth))
    dets = [dict(image_id=a["image_id"], category_id=a["category_id"], segmentation=a["segmentation"], score=1.0)
            for a in to_coco(detected)["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(dets), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_ground_truth_scores_perfectly_in_cocoeval():
    stats = segm_stats([handmade_item(), handmade_item()], [handmade_item(), handmade_item()])
    assert stats[0] == pytest.approx(1.0)


def test_perturbed_detections_score_the_known_lower_ap():
    """The exported masks are what COCOeval measures: a box moved 3 px right has IoU 17/23 =
    0.74 with its truth, a hit at the IoU thresholds 0.50-0.70 and a miss at 0.75-0.95, so the
    box class scores AP 0.5 and the mean over the two classes 0.75 (AP50 1, AP75 0.5)."""
    truth = [handmade_item(), handmade_item()]
    stats = segm_stats(truth, [perturbed_item(box_shift=3), perturbed_item(box_shift=3)])
    assert stats[0] == pytest.approx(0.75) and stats[1] == pytest.approx(1.0) and stats[2] == pytest.approx(0.5)
    # The ring found in one of two images: recall 0.5 at precision 1, which is 51 of COCO's
    # 101 recall points (0.00-0.50), at every IoU threshold; the box class stays at 1.
    stats = segm_stats(truth, [handmade_item(), perturbed_item(drop_ring=True)])
    assert stats[0] == pytest.approx((1 + 51 / 101) / 2)


def test_bad_items_are_explained():
    with pytest.raises(KeyError, match="instance"):
        to_coco([{"rgba": np.zeros((4, 4, 4), np.uint8)}])
    with pytest.raises(ValueError, match="keypoints"):
        to_coco([{"instance": np.ones((4, 4), int), "keypoints": np.zeros((2, 3)), "keypoint_ids": [1]}])


@pytest.mark.blender
@pytest.mark.ray
def test_blender_stream_exports_to_coco(ray_session, tmp_path):
    from blendtorch_ray import BlenderLauncher

    from blendtorch_ray.cli import main

    args = ["--width", "128", "--height", "96"]
    with BlenderLauncher(script=str(SCENE), num_instances=1, instance_args=[args]) as launcher:
        items = list(launcher.dataset(max_items=2, timeout=120, record_to=str(tmp_path / "rec")))
    path = export_coco(items, str(tmp_path), CocoOptions(categories={1: "cube", 2: "sphere"}))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(path)
    # the recording converts to the same COCO through the CLI
    assert main(["coco", str(tmp_path / "rec"), "-o", str(tmp_path / "from_rec"), "--categories", "1=cube,2=sphere"]) == 0
    assert json.loads((tmp_path / "from_rec" / "annotations.json").read_text()) == json.loads(Path(path).read_text())
    assert len(coco.imgs) == 2
    for img_id, item in zip(sorted(coco.imgs), items):
        assert (tmp_path / "images" / coco.imgs[img_id]["file_name"]).is_file()
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
        objects = np.where(item["semantic"] > 0, item["instance"], 0)
        assert sorted(a["instance_id"] for a in anns) == sorted(set(np.unique(objects)) - {0})
        boxes = dict(zip(item["box_ids"].tolist(), item["boxes"].tolist()))
        for a in anns:
            np.testing.assert_array_equal(coco.annToMask(a), objects == a["instance_id"])
            x0, y0, x1, y1 = boxes[a["instance_id"]]
            assert a["bbox"] == [x0, y0, x1 - x0, y1 - y0]  # the scene's boxes match the masks
            assert len(a["keypoints"]) == 8 * 3
            for x, y, v in np.reshape(a["keypoints"], (8, 3)):
                if v == 2:
                    assert 0 <= x < 128 and 0 <= y < 96
