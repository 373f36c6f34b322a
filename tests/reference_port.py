"""A line-by-line transcription of the reference PyTorch port's FCN-32s / 16s / 8s / 8s-at-once
forward passes (explicit layers, pad 100, ceil pooling, fixed crops), with a width knob so tests
can run it small. Used only to check that ``fcn.models.FCN(alignment="caffe")`` computes the same
scores from the same state dict."""

from __future__ import annotations

import torch.nn as nn


class ReferenceFCN(nn.Module):
    def __init__(self, variant: str, n_class: int = 21, w: int = 64, fc: int = 4096):
        super().__init__()
        self.variant = variant
        c1, c2, c3, c4 = w, 2 * w, 4 * w, 8 * w
        self.conv1_1 = nn.Conv2d(3, c1, 3, padding=100)
        self.conv1_2 = nn.Conv2d(c1, c1, 3, padding=1)
        self.conv2_1 = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv2_2 = nn.Conv2d(c2, c2, 3, padding=1)
        self.conv3_1 = nn.Conv2d(c2, c3, 3, padding=1)
        self.conv3_2 = nn.Conv2d(c3, c3, 3, padding=1)
        self.conv3_3 = nn.Conv2d(c3, c3, 3, padding=1)
        self.conv4_1 = nn.Conv2d(c3, c4, 3, padding=1)
        self.conv4_2 = nn.Conv2d(c4, c4, 3, padding=1)
        self.conv4_3 = nn.Conv2d(c4, c4, 3, padding=1)
        self.conv5_1 = nn.Conv2d(c4, c4, 3, padding=1)
        self.conv5_2 = nn.Conv2d(c4, c4, 3, padding=1)
        self.conv5_3 = nn.Conv2d(c4, c4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.fc6 = nn.Conv2d(c4, fc, 7)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.score_fr = nn.Conv2d(fc, n_class, 1)
        if variant == "fcn32s":
            self.upscore = nn.ConvTranspose2d(n_class, n_class, 64, stride=32, bias=False)
        if variant in ("fcn16s", "fcn8s", "fcn8s_atonce"):
            self.score_pool4 = nn.Conv2d(c4, n_class, 1)
            self.upscore2 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, bias=False)
        if variant == "fcn16s":
            self.upscore16 = nn.ConvTranspose2d(n_class, n_class, 32, stride=16, bias=False)
        if variant in ("fcn8s", "fcn8s_atonce"):
            self.score_pool3 = nn.Conv2d(c3, n_class, 1)
            self.upscore_pool4 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, bias=False)
            self.upscore8 = nn.ConvTranspose2d(n_class, n_class, 16, stride=8, bias=False)

    def forward(self, x):
        r = self.relu
        h = r(self.conv1_1(x))
        h = r(self.conv1_2(h))
        h = self.pool(h)
        h = r(self.conv2_1(h))
        h = r(self.conv2_2(h))
        h = self.pool(h)
        h = r(self.conv3_1(h))
        h = r(self.conv3_2(h))
        h = r(self.conv3_3(h))
        h = self.pool(h)
        pool3 = h
        h = r(self.conv4_1(h))
        h = r(self.conv4_2(h))
        h = r(self.conv4_3(h))
        h = self.pool(h)
        pool4 = h
        h = r(self.conv5_1(h))
        h = r(self.conv5_2(h))
        h = r(self.conv5_3(h))
        h = self.pool(h)
        h = r(self.fc6(h))
        h = r(self.fc7(h))
        h = self.score_fr(h)
        if self.variant == "fcn32s":
            h = self.upscore(h)
            return h[:, :, 19 : 19 + x.size()[2], 19 : 19 + x.size()[3]].contiguous()
        h = self.upscore2(h)
        upscore2 = h
        s4 = pool4 * 0.01 if self.variant == "fcn8s_atonce" else pool4
        h = self.score_pool4(s4)
        h = h[:, :, 5 : 5 + upscore2.size()[2], 5 : 5 + upscore2.size()[3]]
        h = upscore2 + h
        if self.variant == "fcn16s":
            h = self.upscore16(h)
            return h[:, :, 27 : 27 + x.size()[2], 27 : 27 + x.size()[3]].contiguous()
        h = self.upscore_pool4(h)
        upscore_pool4 = h
        s3 = pool3 * 0.0001 if self.variant == "fcn8s_atonce" else pool3
        h = self.score_pool3(s3)
        h = h[:, :, 9 : 9 + upscore_pool4.size()[2], 9 : 9 + upscore_pool4.size()[3]]
        h = upscore_pool4 + h
        h = self.upscore8(h)
        return h[:, :, 31 : 31 + x.size()[2], 31 : 31 + x.size()[3]].contiguous()
