"""The cartpole scene, built with bpy: a cart on a rail (slider constraint driven by a velocity
motor) with a pole on a hinge, and copies of it for vector envs. Used by
``blender_worker.scenes.cartpole`` (the env script) and ``cartpole_vector``; imports only bpy.
"""

import math

import bpy

CART_Z = 1.0
CART_HALF = (0.4, 0.25, 0.15)
POLE_HALF_LEN = 0.5
PIVOT_Z = CART_Z + CART_HALF[2]


def _box(name: str, location, half, color) -> "bpy.types.Object":
    bpy.ops.mesh.primitive_cube_add(size=2.0, location=location)
    obj = bpy.context.active_object
    obj.name = name
    obj.scale = half
    bpy.ops.object.transform_apply(location=False, rotation=False, scale=True)
    obj.color = color
    return obj


def _constraint(name: str, kind: str, location, a, b, rotation=(0.0, 0.0, 0.0)) -> "bpy.types.RigidBodyConstraint":
    bpy.ops.object.empty_add(location=location, rotation=rotation)
    empty = bpy.context.active_object
    empty.name = name
    bpy.ops.rigidbody.constraint_add(type=kind)
    con = empty.rigid_body_constraint
    con.object1, con.object2 = a, b
    con.disable_collisions = True
    return con


def prepare_world(fps: int) -> "bpy.types.Scene":
    """Empty the scene of meshes and set up its rigid-body world (``fps`` frames per second,
    10 substeps, 10 solver iterations) and its camera; returns the scene."""
    for obj in list(bpy.data.objects):
        if obj.type == "MESH":
            bpy.data.objects.remove(obj, do_unlink=True)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = fps, 1.0
    if scene.rigidbody_world is None:
        bpy.ops.rigidbody.world_add()
    scene.rigidbody_world.substeps_per_frame = 10
    scene.rigidbody_world.solver_iterations = 10
    cam = scene.camera
    cam.location = (0.0, -7.0, 1.8)
    cam.rotation_euler = (math.radians(88), 0.0, 0.0)
    scene.display.shading.color_type = "OBJECT"
    return scene


def build_cartpole(y: float = 0.0, tag: str = "") -> dict:
    """Build one cartpole (rail, cart, pole and their constraints) centred on (0, ``y``, 0).

    Returns:
        ``{"rail", "cart", "pole", "slider", "motor", "hinge"}``: the objects (the motor
        entry is the motor's ``rigid_body_constraint``).
    """
    rail = _box("Rail" + tag, (0.0, y, CART_Z - 0.3), (5.0, 0.05, 0.05), (0.3, 0.3, 0.3, 1.0))
    bpy.ops.rigidbody.object_add(type="PASSIVE")
    cart = _box("Cart" + tag, (0.0, y, CART_Z), CART_HALF, (0.2, 0.4, 0.9, 1.0))
    bpy.ops.rigidbody.object_add(type="ACTIVE")
    cart.rigid_body.mass = 1.0
    pole = _box("Pole" + tag, (0.0, y, PIVOT_Z + POLE_HALF_LEN), (0.04, 0.04, POLE_HALF_LEN), (0.9, 0.5, 0.1, 1.0))
    bpy.ops.rigidbody.object_add(type="ACTIVE")
    pole.rigid_body.mass = 0.1
    for body in (cart, pole):
        body.rigid_body.linear_damping = 0.0
        body.rigid_body.angular_damping = 0.0
        body.rigid_body.use_deactivation = False

    slider = _constraint("Slider" + tag, "SLIDER", (0.0, y, CART_Z), rail, cart)
    motor = _constraint("Motor" + tag, "MOTOR", (0.0, y, CART_Z), cart, rail)
    motor.use_motor_lin = True
    motor.motor_lin_max_impulse = 1000.0
    motor.motor_lin_target_velocity = 0.0
    # Hinge axis is the empty's local Z; rotate it onto the world Y axis.
    hinge = _constraint("Hinge" + tag, "HINGE", (0.0, y, PIVOT_Z), cart, pole, rotation=(math.pi / 2, 0.0, 0.0))
    return {"rail": rail, "cart": cart, "pole": pole, "slider": slider.id_data, "motor": motor, "hinge": hinge.id_data}


def build_scene(fps: int) -> dict:
    """Build the cartpole scene (one cartpole); returns its objects and the motor constraint."""
    prepare_world(fps)
    return build_cartpole()


def copy_cartpole(template: dict, y: float, tag: str, rail=None, layer: int = 0) -> dict:
    """Copy the cartpole ``template`` (from `build_cartpole` at y = 0) to (0, ``y``, 0).

    Args:
        template: The objects `build_cartpole` returned.
        y: Where the copy goes along the world Y axis.
        tag: Suffix of the copies' names.
        rail: An existing rail to mount the copy on (None: copy the rail too).
        layer: Collision collection of the copy's cart and pole (bodies in different
            collections never collide).

    Returns:
        The same keys as `build_cartpole`.
    """
    collection = bpy.context.scene.collection
    out = {}
    for key in ("rail", "cart", "pole", "slider", "motor", "hinge"):
        if key == "rail" and rail is not None:
            out[key] = rail
            continue
        src = template[key].id_data if key == "motor" else template[key]
        obj = src.copy()
        obj.name = src.name + tag
        obj.location = (src.location[0], src.location[1] + y, src.location[2])
        collection.objects.link(obj)
        out[key] = obj
    for key in ("slider", "motor", "hinge"):
        con = out[key].rigid_body_constraint
        src = (template[key].id_data if key == "motor" else template[key]).rigid_body_constraint
        con.object1 = out[_key_of(template, src.object1)]
        con.object2 = out[_key_of(template, src.object2)]
    out["motor"] = out["motor"].rigid_body_constraint
    for key in ("cart", "pole"):
        out[key].rigid_body.collision_collections = [k == layer for k in range(20)]
    return out


def _key_of(template: dict, obj) -> str:
    return next(k for k in ("rail", "cart", "pole") if template[k] == obj)
