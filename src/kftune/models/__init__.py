"""Models layer: building, saving and loading the models kftune trains, in every training mode."""
