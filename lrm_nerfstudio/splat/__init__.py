"""The reconstruction as 3D Gaussians: conversion from a triplane field, the 3DGS PLY, gsplat rendering on CUDA."""
