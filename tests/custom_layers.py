"""A custom Keras layer that is not registered with Keras: loading a model that uses it
needs ``--custom-object tests.custom_layers:ScaleShift`` (or ``custom_objects`` in a config)."""

import keras


class ScaleShift(keras.layers.Layer):
    """y = x * scale + shift, one scale and shift per channel."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")
        self.shift = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="shift")

    def call(self, x):
        return x * self.scale + self.shift
