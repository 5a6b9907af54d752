"""Balance the Blender cartpole with a classic linear controller (no learning).

    python examples/control/cartpole_controller.py --episodes 3
    python examples/control/cartpole_controller.py --gif cartpole.gif    # also render frames
    python examples/control/cartpole_controller.py --real-time           # free-running physics

Pushes right when ``k . obs > 0`` with obs = (x, x_dot, angle, angle_dot). A pole tilting
right (angle > 0) is caught by pushing the cart right under it; the small position and
velocity gains keep the cart near the middle of the rail.
"""

import argparse
import time

import gymnasium as gym
import numpy as np

import blendtorch_ray  # noqa: F401 - registers blendtorch/CartPole-v0

GAINS = np.array([0.1, 0.5, 10.0, 2.0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--gif", default=None, help="write the first episode's frames (every 5th) to this GIF")
    parser.add_argument("--real-time", action="store_true", help="free-running simulation at 50 fps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ui", action="store_true",
                        help="watch it in Blender's window (needs a Blender binary and $DISPLAY; README: Interactive mode)")
    parser.add_argument("--blender", default=None, help="Blender to run (default: the bpy wheel; with --ui: 'blender')")
    args = parser.parse_args()
    ui = {"ui": True, "blender": args.blender or "blender"} if args.ui else ({"blender": args.blender} if args.blender else {})

    env = gym.make(
        "blendtorch/CartPole-v0",
        render_mode="rgb_array" if args.gif else None,
        max_episode_steps=args.max_steps,
        real_time=args.real_time,
        **ui,
    )
    frames = []
    try:
        for episode in range(args.episodes):
            obs, _ = env.reset(seed=args.seed + episode)
            total, t0 = 0.0, time.perf_counter()
            while True:
                action = int(GAINS @ obs > 0)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += reward
                if args.gif and episode == 0 and int(total) % 5 == 0:
                    frames.append(env.render())
                if terminated or truncated:
                    break
            rate = total / (time.perf_counter() - t0)
            end = "terminated" if terminated else "truncated"
            print(f"episode {episode}: return {total:.0f} ({end}), final x={obs[0]:+.2f} m "
                  f"angle={obs[2]:+.3f} rad, {rate:.0f} steps/s")
    finally:
        env.close()
    if frames:
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(args.gif, save_all=True, append_images=images[1:], duration=100, loop=0)
        print(f"wrote {len(images)} frames to {args.gif}")


if __name__ == "__main__":
    main()
