"""Re-detection of lost layers by feature matching (ORB + RANSAC homography).

When a layer has been hidden long enough for its extrapolated motion to be unreliable (fully
occluded, or out of the frame and back), its frame-0 ORB features are matched against the current
frame and a RANSAC homography, if well supported, becomes the layer's new frame-0 → frame-t map.
"""

from __future__ import annotations

import cv2
import numpy as np

BOUNDARY_MARGIN = 3  # px: keypoints this close to another layer are ambiguous and skipped


class Redetector:
    """Frame-0 ORB features per layer, matched on demand against later frames (cached per frame)."""

    def __init__(self, gray0: np.ndarray, labels: np.ndarray, features: int = 2000, ratio: float = 0.8,
                 min_inliers: int = 10, reprojection_px: float = 3.0):
        """gray0: uint8 (h, w) frame 0; labels: int (h, w) layer map of frame 0."""
        self.orb = cv2.ORB_create(nfeatures=features, fastThreshold=7, edgeThreshold=15, patchSize=15)
        self.matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
        self.ratio, self.min_inliers, self.reprojection_px = ratio, min_inliers, reprojection_px
        keypoints, desc = self.orb.detectAndCompute(gray0, None)
        self.points = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
        self.desc = desc
        self.layers: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._frame: tuple[int, np.ndarray, np.ndarray | None] | None = None
        self.set_labels(labels)

    def set_labels(self, labels: np.ndarray) -> None:
        """(Re)assign frame-0 keypoints to layers from the int (h, w) ``labels`` map."""
        self.layers = {}
        if self.desc is None:
            return
        kernel = np.ones((2 * BOUNDARY_MARGIN + 1,) * 2, np.uint8)
        col = np.clip(np.rint(self.points[:, 0]).astype(int), 0, labels.shape[1] - 1)
        row = np.clip(np.rint(self.points[:, 1]).astype(int), 0, labels.shape[0] - 1)
        for k in np.unique(labels):
            interior = cv2.erode((labels == k).astype(np.uint8), kernel)
            sel = interior[row, col] > 0
            if sel.sum() >= self.min_inliers:
                self.layers[int(k)] = (self.points[sel], self.desc[sel])

    def _features(self, t: int, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self._frame is None or self._frame[0] != t:
            keypoints, desc = self.orb.detectAndCompute(gray, None)
            self._frame = (t, np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2), desc)
        return self._frame[1], self._frame[2]

    def find(self, layer: int, t: int, gray: np.ndarray) -> np.ndarray | None:
        """Homography (3, 3) frame 0 → frame ``t`` of ``layer``, or None when not found reliably."""
        if layer not in self.layers:
            return None
        src_pts, src_desc = self.layers[layer]
        dst_pts, dst_desc = self._features(t, gray)
        if dst_desc is None or len(dst_desc) < 2:
            return None
        pairs = self.matcher.knnMatch(src_desc, dst_desc, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < self.ratio * p[1].distance]
        if len(good) < self.min_inliers:
            return None
        src = src_pts[[m.queryIdx for m in good]]
        dst = dst_pts[[m.trainIdx for m in good]]
        model, mask = cv2.findHomography(src, dst, cv2.RANSAC, self.reprojection_px)
        if model is None or mask is None or int(mask.sum()) < self.min_inliers:
            return None
        return model / model[2, 2]
