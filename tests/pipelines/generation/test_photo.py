"""Photo intake: EXIF orientation, transparency, fitting any aspect ratio around the person, and the box math."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
from pydantic import ValidationError

from pipelines.generation.photo import (
    PhotoError,
    PhotoOptions,
    fit_mask,
    parse_background,
    photo_options,
    prepare_photo,
    read_image,
)
from pipelines.preprocess.clips import CropBox, centre_box, largest_box

PORTRAIT = (120, 60)  # H, W of a standing person's photo
LANDSCAPE = (32, 48)  # output H, W


def portrait_photo(alpha: bool = False) -> PIL.Image.Image:
    """A grey photo with a red 'person' (rows 20-99, columns 5-24) near its left edge."""
    pixels = np.full((*PORTRAIT, 4 if alpha else 3), 128, np.uint8)
    if alpha:
        pixels[..., 3] = 0
    pixels[20:100, 5:25, :3] = (255, 0, 0)
    if alpha:
        pixels[20:100, 5:25, 3] = 255
    return PIL.Image.fromarray(pixels, "RGBA" if alpha else "RGB")


def test_largest_box_keeps_the_aspect_and_stays_inside():
    assert largest_box((10.0, 50.0), (100, 200), (32, 48)) == CropBox(0, 0, 150, 100)
    assert largest_box((190.0, 50.0), (100, 200), (32, 48)) == CropBox(50, 0, 150, 100)
    assert largest_box((30.0, 80.0), (120, 60), (32, 48)) == CropBox(0, 60, 60, 40)
    assert centre_box((120, 60), (32, 48)) == CropBox(0, 40, 60, 40)


def test_exif_orientation_6_is_turned_upright(tmp_path):
    # Stored lying on its side (80 wide, 40 high); orientation 6 says: turn 90 degrees clockwise to view.
    stored = np.zeros((40, 80, 3), np.uint8)
    stored[:, :10] = 255  # the left edge of the stored image is the top of the upright photo
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    PIL.Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    photo = prepare_photo(read_image(tmp_path / "phone.jpg"), (80, 40), PhotoOptions(fit="pad"))
    assert (photo.intake.orientation, photo.intake.source_height, photo.intake.source_width) == (6, 80, 40)
    assert photo.pixels[:8].mean() > 200 and photo.pixels[-40:].mean() < 30  # bright band on top


def test_rgba_is_flattened_and_its_alpha_places_the_box(tmp_path):
    portrait_photo(alpha=True).save(tmp_path / "cut-out.png")
    photo = prepare_photo(read_image(tmp_path / "cut-out.png"), (32, 32), PhotoOptions(background="#00ff00"))
    intake = photo.intake
    assert (intake.method, intake.flattened, intake.fit) == ("alpha", True, "crop")
    assert (intake.x0, intake.y0, intake.width, intake.height) == (0, 14, 60, 60)  # rows 20-99: keeps the top
    assert tuple(photo.pixels[0, -1]) == (0, 255, 0) and photo.pixels[16, 8, 0] > 200
    assert "cuts the person" in intake.note  # 80 rows tall in a 60-row box


def test_portrait_at_a_landscape_output_crop_and_pad():
    crop = prepare_photo(portrait_photo(), LANDSCAPE)
    assert crop.pixels.shape == (*LANDSCAPE, 3)
    assert (crop.intake.method, crop.intake.box()) == ("centre", CropBox(0, 40, 60, 40))
    assert "no person detector ran" in crop.intake.note

    pad = prepare_photo(portrait_photo(), LANDSCAPE, PhotoOptions(fit="pad", background=(0, 0, 255)))
    assert pad.intake.method == "pad" and pad.pixels.shape == (*LANDSCAPE, 3)
    assert (pad.intake.x0, pad.intake.y0, pad.intake.width, pad.intake.height) == (-60, 0, 180, 120)
    assert tuple(pad.pixels[16, 0]) == (0, 0, 255) and tuple(pad.pixels[16, -1]) == (0, 0, 255)
    assert pad.pixels[16, 16:32].std() > 0  # the photo, 16 columns wide, in the middle


class FakeEstimator:
    def __init__(self, confidence: float):
        self.confidence = confidence

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        points = np.zeros((len(frames), 17, 3))
        points[:, :, 0] = np.linspace(6, 24, 17)
        points[:, :, 1] = np.linspace(22, 98, 17)
        points[:, :, 2] = self.confidence
        return points


def test_a_detector_places_the_box_or_says_it_found_no_person():
    photo = prepare_photo(portrait_photo(), LANDSCAPE, estimator=FakeEstimator(0.9))
    assert photo.intake.method == "keypoints" and photo.intake.box() == CropBox(0, 18, 60, 40)  # head kept
    assert "cuts the person" in photo.intake.note
    # the keypoints follow the crop into output pixels (scale 0.8):
    # x 6 -> (6 + 0.5) * 0.8 - 0.5, y 22 -> (22 - 18 + 0.5) * 0.8 - 0.5
    np.testing.assert_allclose(photo.keypoints[0], [4.7, 3.1, 0.9])
    tight = prepare_photo(portrait_photo(), (64, 32), PhotoOptions(margin=0.2), estimator=FakeEstimator(0.9))
    assert tight.intake.box().height < 120 and tight.intake.note is None
    with pytest.raises(PhotoError, match="found no person in the photo.*fit: pad.*fit: centre"):
        prepare_photo(portrait_photo(), LANDSCAPE, estimator=FakeEstimator(0.1))
    assert prepare_photo(portrait_photo(), LANDSCAPE, PhotoOptions(fit="centre"),
                         estimator=FakeEstimator(0.1)).intake.method == "centre"


@pytest.mark.parametrize(
    "image, message",
    [
        (PIL.Image.new("RGBA", (16, 16)), "fully transparent"),
        (PIL.Image.new("I;16", (16, 16)), "mode I;16"),
        (np.zeros((8, 8, 3), np.float32), "expected uint8"),
        (np.zeros((8, 8, 2), np.uint8), "expected shape"),
    ],
)
def test_unusable_photos_name_the_problem(image, message):
    with pytest.raises(PhotoError, match=message):
        prepare_photo(image, (32, 32))


def test_options_parse_and_name_the_field():
    assert parse_background("10, 20,30") == (10, 20, 30) == parse_background([10, 20, 30])
    assert photo_options({"fit": "pad", "background": "#ffffff", "margin": None}).background == (255, 255, 255)
    for bad in ({"background": "red"}, {"background": [0, 0, 256]}, {"fit": "stretch"}):
        with pytest.raises(ValidationError, match="background|fit"):
            PhotoOptions(**bad)
    with pytest.raises(ValidationError, match="dwpose_model"):
        PhotoOptions(detector={"keypoint_backend": "dwpose"})


def test_astronaut_photo_any_size_through_the_defaults():
    skimage_data = pytest.importorskip("skimage.data")
    photo = prepare_photo(skimage_data.astronaut()[:, 100:400], LANDSCAPE)
    assert photo.pixels.shape == (*LANDSCAPE, 3) and photo.intake.source_width == 300


@pytest.mark.parametrize("fit", ["centre", "pad"])
def test_a_region_mask_is_fitted_with_the_photos_box(fit):
    """A mask drawn on the photo keeps the same pixels after intake: where it is white, the photo is red."""
    photo = np.zeros((120, 60, 3), np.uint8)  # portrait, into a landscape output
    photo[40:70, 20:45] = (255, 0, 0)
    mask = np.zeros((120, 60), np.uint8)
    mask[40:70, 20:45] = 255
    fitted = prepare_photo(photo, (32, 48), PhotoOptions(fit=fit))
    kept = fit_mask(mask, fitted.intake, (32, 48))
    assert kept.shape == (32, 48)
    red = (fitted.pixels[..., 0] > 127) & (fitted.pixels[..., 1] < 127)
    inside = kept > 127
    letterbox = (fitted.pixels > 200).all(-1)  # fit: pad's white bars: outside the photo, the mask keeps all
    assert red.any() and (inside == red)[~letterbox].mean() > 0.97 and inside[letterbox].all()
    with pytest.raises(PhotoError, match="mask: size 10x10 differs"):
        fit_mask(np.zeros((10, 10), np.uint8), fitted.intake, (32, 48))
    with pytest.raises(PhotoError, match="mask: mode RGB"):
        fit_mask(PIL.Image.fromarray(photo), fitted.intake, (32, 48))
