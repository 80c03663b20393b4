"""odeserve: train and serve continuous-time generative models over REST."""
