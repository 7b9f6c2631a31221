"""Graph hypernetworks (GHN-2, GHN-3, LoGAH decoders) and MIP hypernetworks."""
