"""The image list shipped with layerindex (images.txt)."""
