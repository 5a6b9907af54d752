"""Place the camera at a known pose and publish Camera projections of known points."""
import bpy
import numpy as np

import blender_worker as bw

launch, _ = bw.parse_launch_args()
scene = bpy.context.scene
scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 640, 480, 100
cam_obj = scene.camera
cam_obj.data.type = "PERSP"
cam_obj.data.lens = 50.0
cam_obj.data.sensor_width = 36.0
cam_obj.data.sensor_fit = "AUTO"
cam_obj.data.shift_x = cam_obj.data.shift_y = 0.0
cube = bpy.data.objects["Cube"]
cube.location = (0, 0, 0)
cube.rotation_euler = (0, 0, 0)
cube.scale = (1, 1, 1)
cam = bw.Camera()
cam.look_at(look_at=(0, 0, 0), look_from=(0, -10, 0))
pts = np.array([[0, 0, 0], [1, 0, 0], [0, 0, 1], [-2, 5, -1]], dtype=np.float64)
ndc, depth = cam.world_to_ndc(pts, return_depth=True)
pub = bw.DataPublisher(launch)
pub.publish(
    pts=pts,
    ndc=ndc,
    depth=depth,
    pix=cam.ndc_to_pixel(ndc),
    pix_ll=cam.ndc_to_pixel(ndc, origin="lower-left"),
    obj_pix=cam.object_to_pixel(cube),
    bbox_pix=cam.bbox_object_to_pixel(cube),
    shape=cam.shape,
    cam_location=np.array(cam_obj.location),
)
pub.close()
