"""Face data: the ToyFaces world, real datasets and the file formats of the field."""
