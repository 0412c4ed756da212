// See png_writer.h. libpng reports errors through longjmp; every libpng object is released on both paths.
#include "formats/png_writer.h"

#include <png.h>

#include <csetjmp>
#include <cstdio>

#include "cli_error.h"
#include "formats/atomic_file.h"

namespace sla_cli {

RgbImage::RgbImage(int width, int height, Rgb background)
    : width_(width), height_(height), pixels_(static_cast<std::size_t>(width) * height * 3) {
  fill_rect(0, 0, width, height, background);
}

void RgbImage::set(int x, int y, Rgb c) {
  if (x < 0 || y < 0 || x >= width_ || y >= height_) return;
  uint8_t* p = &pixels_[(static_cast<std::size_t>(y) * width_ + x) * 3];
  p[0] = c.r;
  p[1] = c.g;
  p[2] = c.b;
}

Rgb RgbImage::get(int x, int y) const {
  const uint8_t* p = &pixels_[(static_cast<std::size_t>(y) * width_ + x) * 3];
  return {p[0], p[1], p[2]};
}

void RgbImage::fill_rect(int x, int y, int w, int h, Rgb c) {
  for (int yy = y; yy < y + h; ++yy) {
    for (int xx = x; xx < x + w; ++xx) set(xx, yy, c);
  }
}

namespace {

// Encodes into an open FILE. Kept free of C++ objects with destructors: longjmp would skip them.
bool encode(FILE* f, const RgbImage& image, const char** error) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  if (png == nullptr) {
    *error = "png_create_write_struct failed";
    return false;
  }
  png_infop info = png_create_info_struct(png);
  if (info == nullptr || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    *error = "libpng could not encode the image";
    return false;
  }
  png_init_io(png, f);
  png_set_IHDR(png, info, static_cast<png_uint_32>(image.width()), static_cast<png_uint_32>(image.height()), 8,
               PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  const uint8_t* base = image.pixels().data();
  for (int y = 0; y < image.height(); ++y) {
    png_write_row(png, const_cast<png_bytep>(base + static_cast<std::size_t>(y) * image.width() * 3));
  }
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return true;
}

}  // namespace

void write_png(const RgbImage& image, const std::string& path, const std::string& what) {
  AtomicFile file(path, what);
  const char* error = nullptr;
  if (!encode(file.stream(), image, &error)) throw RunError(what + ": " + error);
  file.commit();
}

}  // namespace sla_cli
